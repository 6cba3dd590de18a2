"""The one training loop of every exercise: train_one_epoch, evaluate, and fit a run folder."""
import math
import os
import time

import torch
import torch.nn.functional as F

from data import batches, epoch_order
from runs import CHECKPOINT_FILE, LAST_FILE, record_problem
from storage import load_checkpoint, save_atomic
from utils import UserError

EVAL_BATCH_SIZE = 1000  # evaluation keeps no activations for backward, so it takes big batches


def _loss_and_correct(logits, y):
    loss = F.cross_entropy(logits, y)
    return loss, (logits.argmax(-1) == y).sum()


def cross_entropy(logits, y, x):
    """The default training loss: cross-entropy on the labels (`x`, the inputs, unused)."""
    return F.cross_entropy(logits, y)


def train_one_epoch(model, batches, optimizer, scheduler=None, progress=None, criterion=cross_entropy):
    """One pass over `batches` of (x, y); returns {'loss', 'acc'} as floats.

    Sums stay on the device (no .item() per step) so the loop never waits on them.
    `scheduler` is stepped every batch; `progress` is a tqdm bar or None; `criterion(logits,
    y, x)` is the loss minimized (a distillation loss reads the inputs to ask its teacher).
    """
    model.train()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in batches:
        logits = model(x)
        loss, right = criterion(logits, y, x), (logits.argmax(-1) == y).sum()
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


def all_finite(model):
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def fit(model, arch, data, optimizer, run, *, epochs, batch_size, generator, scheduler=None,
        train_transform=None, eval_transform=None, progress=True, desc="train", criterion=cross_entropy):
    """Train `run` for `epochs`, validate after each, keep the best-validation checkpoint.

    `arch` ({'name', 'kwargs'} of models.build_model) goes into the checkpoint, so any
    caller can rebuild the network. The test set is read once, at the end, by the
    checkpoint that validation picked. After every epoch the run folder holds `last.pt`
    (model, optimizer, scheduler, RNG), so an interrupted run resumes from its last
    finished epoch. A non-finite training or validation loss stops the run as diverged,
    and a non-finite model is never saved as best.

    Returns (outcome, record): ('trained', the final record); ('held', None) without
    training if another process holds the run; ('finished', the saved record) if another
    process finished it meanwhile.
    """
    from tqdm import tqdm

    if not run.claim():
        return "held", None
    try:
        saved = run.saved()
        if saved is not None:
            return "finished", saved
        return "trained", _fit(model, arch, data, optimizer, run, epochs, batch_size, generator, scheduler,
                    train_transform, eval_transform, tqdm, progress, desc, criterion)
    finally:
        run.release()


def _fit(model, arch, data, optimizer, run, epochs, batch_size, generator, scheduler,
         train_transform, eval_transform, tqdm, progress, desc, criterion):
    # vanishing gradients of deep plain nets reach denormal floats, which are slow on CPUs
    torch.set_flush_denormal(True)
    device = data.train.y.device
    best_path, last_path = os.path.join(run.path, CHECKPOINT_FILE), os.path.join(run.path, LAST_FILE)
    start_epoch, best_val = _resume(last_path, run, model, optimizer, scheduler, generator)
    if start_epoch == 0 and os.path.exists(best_path):
        os.remove(best_path)  # a checkpoint of an interrupted earlier start must not stand for this one
    steps = math.ceil(len(data.train) / batch_size)
    status = "complete"
    bar = tqdm(total=epochs * steps, initial=start_epoch * steps, desc=desc, unit="step",
               disable=not progress, dynamic_ncols=True)
    try:  # the bar is closed before an error's one line, which must come last
        for epoch in range(start_epoch + 1, epochs + 1):
            started = time.perf_counter()
            order = epoch_order(len(data.train), generator, device)
            train = train_one_epoch(model, batches(data.train, batch_size, order, train_transform),
                                    optimizer, scheduler, bar, criterion)
            metrics = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
                       **getattr(criterion, "epoch_metrics", dict)()}  # a criterion's own measures
            if math.isfinite(train["loss"]):
                val = evaluate(model, batches(data.val, EVAL_BATCH_SIZE, transform=eval_transform))
                metrics.update(val_loss=val["loss"], val_acc=val["acc"])
            metrics["seconds"] = time.perf_counter() - started
            if not all(math.isfinite(metrics.get(k, math.nan)) for k in ("train_loss", "val_loss")):
                status = "diverged"
                run.log_epoch(**metrics)
                break
            run.log_epoch(**metrics)
            bar.set_postfix(train_loss=f"{train['loss']:.3f}", val_acc=f"{val['acc']:.4f}")
            if val["acc"] > best_val and all_finite(model):
                best_val = val["acc"]
                save_atomic({"model": model.state_dict(), "arch": arch, "config": run.config,
                             "epoch": epoch, "val_acc": val["acc"]}, best_path)
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict() if scheduler else None,
                         "generator": generator.get_state(), "record": run.record,
                         "best_val": best_val}, last_path)
    finally:
        bar.close()
    summary = {}
    if os.path.exists(best_path):
        best = load_checkpoint(best_path, f"delete the run folder {run.path} and rerun", device)
        model.load_state_dict(best["model"])
        test = evaluate(model, batches(data.test, EVAL_BATCH_SIZE, transform=eval_transform))
        summary = {"best_epoch": best["epoch"], "best_val_acc": best["val_acc"],
                   "test_acc": test["acc"], "test_loss": test["loss"]}
    run.finish(status, **summary)
    if os.path.exists(last_path):
        os.remove(last_path)  # the run is finished: best.pt and metrics.json are what stays
    return run.record


PROVENANCE = ("commit", "torch")  # meta that says which code ran, not what decides the numbers


def _same_numbers(meta):
    """The meta fields a resumed run must share with its start (data, hardware, threads)."""
    return {k: v for k, v in (meta or {}).items() if k not in PROVENANCE}


def _resume(last_path, run, model, optimizer, scheduler, generator):
    """Restore the state of an interrupted run; returns (epochs done, best validation acc)."""
    if not os.path.exists(last_path):
        return 0, -1.0
    remedy = "delete it to restart this run from epoch 0"
    state = load_checkpoint(last_path, remedy, keys=("model", "optimizer", "generator", "record", "best_val"))
    if not isinstance(state["record"], dict) or state["record"].get("config") != run.config:
        raise UserError(f"{last_path} belongs to a run with other settings; {remedy}")
    if _same_numbers(state["record"].get("meta")) != _same_numbers(run.record["meta"]):
        # CPU kernels sum in an order that depends on the thread count: a run resumed under
        # other threads (or data, or hardware) would match no uninterrupted run
        then, now = (state["record"].get("meta") or {}).get("hardware"), run.record["meta"].get("hardware")
        raise UserError(f"{last_path} was trained on {then}, this process is {now}: resume it the way it "
                        f"was started (a single run uses every core, a sweep worker one), or {remedy}")
    problem = record_problem(state["record"])
    if problem or not isinstance(state["best_val"], float):
        raise UserError(f"{last_path} holds a damaged run record ({problem or 'best_val'}); {remedy}")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{last_path} does not fit this run ({type(e).__name__}); {remedy}")
    best_path = os.path.join(run.path, CHECKPOINT_FILE)
    if state["best_val"] >= 0 and not os.path.exists(best_path):
        raise UserError(f"{best_path} is missing, although this run saved one (validation accuracy "
                        f"{state['best_val']:.4f}): the run cannot be finished without it; delete the run "
                        f"folder {run.path} and rerun to train it again")
    run.record = state["record"]
    print(f"{run.path}: resuming after epoch {len(run.record['epochs'])}")
    return len(run.record["epochs"]), state["best_val"]


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
