"""The one training loop of every exercise: train_one_epoch, evaluate, fit, and Exercise 1.3's recipe."""
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data import batches, epoch_order

EVAL_BATCH_SIZE = 1000  # evaluation keeps no activations for backward, so it takes big batches
CNN_CPU_EPOCHS = 8      # Exercise 1.3's CPU preset: the published CNN runs that Exercise 2 reads


def _loss_and_correct(logits, y):
    loss = F.cross_entropy(logits, y)
    return loss, (logits.argmax(-1) == y).sum()


def train_one_epoch(model, batches, optimizer, scheduler=None, progress=None, criterion=None):
    """One pass over `batches` of (x, y); returns {'loss', 'acc'} as floats.

    Sums stay on the device (no .item() per step) so the loop never waits on them.
    `scheduler` is stepped every batch; `progress` is a tqdm bar or None. The loss minimized is
    cross-entropy on the labels, or `criterion(logits, y, x)` if given (a distillation loss
    reads the inputs to ask its teacher).
    """
    model.train()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in batches:
        logits = model(x)
        loss = F.cross_entropy(logits, y) if criterion is None else criterion(logits, y, x)
        right = (logits.argmax(-1) == y).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum = loss_sum + loss.detach() * y.shape[0]
        correct = correct + right
        n += y.shape[0]
        if progress is not None:
            progress.update(1)
    return {"loss": float(loss_sum) / n, "acc": float(correct) / n}


@torch.no_grad()
def evaluate(model, batches):
    """Mean loss and accuracy of `model` over `batches`; returns {'loss', 'acc'} as floats."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in batches:
        loss, right = _loss_and_correct(model(x), y)
        loss_sum = loss_sum + loss * y.shape[0]
        correct = correct + right
        n += y.shape[0]
    return {"loss": float(loss_sum) / n, "acc": float(correct) / n}


@dataclass
class Recipe:
    """How a run trains, besides its model, data and run folder."""
    optimizer: torch.optim.Optimizer
    epochs: int
    batch_size: int
    generator: torch.Generator        # the batch order and the augmentation draw from it
    scheduler: object = None          # stepped every batch
    criterion: Optional[Callable] = None  # (logits, y, x) -> loss; None: cross-entropy
    train_transform: Optional[Callable] = None  # uint8 batch -> the model's input (augmented)
    eval_transform: Optional[Callable] = None
    read_test: bool = True            # False for a candidate of a selection grid: validation only


def fit(model, data, recipe, run, progress=True):
    """Train in the run folder `run` (lab.runs.RunFolder) for recipe.epochs, validating after
    each epoch and keeping the best-validation checkpoint; the test set is read once, at the
    end, by that checkpoint (never by a candidate of a selection: recipe.read_test False). An
    interrupted run resumes from its last finished epoch; a non-finite loss stops it as diverged.
    Returns ('trained', record), or ('finished', record) if the folder held a finished run already."""
    if run.finished is not None:
        return "finished", run.finished
    torch.set_flush_denormal(True)  # vanishing gradients of deep plain nets reach slow denormal floats
    start = run.resume(model, recipe.optimizer, recipe.scheduler, recipe.generator)
    steps, device = math.ceil(len(data.train) / recipe.batch_size), data.train.y.device
    with tqdm(total=recipe.epochs * steps, initial=start * steps, desc=os.path.basename(run.path),
              unit="step", disable=not progress, dynamic_ncols=True) as bar:
        for epoch in range(start + 1, recipe.epochs + 1):
            started, cpu_started = time.perf_counter(), time.process_time()
            order = epoch_order(len(data.train), recipe.generator, device)
            train_batches = batches(data.train, recipe.batch_size, order, recipe.train_transform)
            train = train_one_epoch(model, train_batches, recipe.optimizer, recipe.scheduler, bar,
                                    recipe.criterion)
            metrics = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
                       "lr": recipe.optimizer.param_groups[0]["lr"]}
            diverged = not math.isfinite(train["loss"])  # a non-finite loss ends the run: diverged
            if not diverged:
                val = evaluate(model, batches(data.val, EVAL_BATCH_SIZE, transform=recipe.eval_transform))
                metrics.update(val_loss=val["loss"], val_acc=val["acc"])
                diverged = not math.isfinite(val["loss"])
            # wall time, and this process's CPU time (which other work on the machine does not inflate)
            metrics.update(seconds=time.perf_counter() - started,
                           cpu_seconds=time.process_time() - cpu_started)
            run.log_epoch(metrics, diverged)
            if diverged:
                break
            bar.set_postfix(train_loss=f"{train['loss']:.3f}", val_acc=f"{val['acc']:.4f}")
            run.commit_epoch(model, recipe.optimizer, recipe.scheduler, recipe.generator, epoch, val["acc"])
    test = None
    if run.load_best(model) and recipe.read_test:  # a selection candidate never sees the test set
        test = evaluate(model, batches(data.test, EVAL_BATCH_SIZE, transform=recipe.eval_transform))
    return "trained", run.finish(test, validation_only=not recipe.read_test)


def warmup_cosine(total_steps, warmup_steps):
    """Learning-rate factor per step: linear warm-up, then cosine decay to zero."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def sgd_warmup_cosine(model, config, steps_per_epoch):
    """Exercise 1.3's optimizer (He et al.'s: SGD, Nesterov momentum, weight decay) and its
    per-step schedule (warm-up to config['lr'], then cosine to zero), from a run's config."""
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                                nesterov=True, weight_decay=config["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        config["epochs"] * steps_per_epoch, round(config["warmup_epochs"] * steps_per_epoch)))
    return optimizer, scheduler
