"""The machinery that keeps results safe, below the science. A script imports its face, these
names, and nothing else of lab:

    ArgumentParser, run_cli   argparse with one-line errors and the flags scripts share, declared
                              once (add_device_flag, add_output_flags, add_workers_flag,
                              add_run_flags, add_tensorboard_flag); run_cli runs main, any
                              user-facing error one line with exit code 2
    kinds                     what a value may be: flag types (kinds.EPOCHS, kinds.SEED, ...)
                              and the schema of a saved file's fields (Number, ListOf, Packed)
    UserError, DataError      the errors said in one line (the user's to fix; the dataset's)
    count                     '1 run', '2 runs'
    prepared_run              before a single run trains: finished already (and where)? if
                              not, its data, loaded with its folder made and its threads set
    set_threads               the CPU threads of a process that measures or analyses
    Sweep                     the runs of a sweep, trained by worker processes (Sweep.run)
    load_model                a network rebuilt from a checkpoint, everything in it checked
    runs                      run folders: RunFolder (train writes into it), folder names,
                              finished runs looked up among the published results and --out-dir
    outputs                   where tables and figures go (destination, write_table), the
                              README's blocks, and a result computed once and read back checked
                              (save_analysis, read_analysis, computed_once)

Below the face (a script never imports them; lab's modules and the science's own data, report
and pretrained modules do): lab.files (atomic writes, checked reads, folder locks), lab.sweeps
(shards, the worker pool), lab.datafiles (dataset files checked, image folders cached),
lab.checkpoints, lab.launch, lab.cli, lab.errors. lab imports no science module (lab.checkpoints
builds a network from a checkpoint's description: the one exception).
"""
from lab import kinds, outputs, runs
from lab.checkpoints import load_model
from lab.cli import ArgumentParser, count, run_cli
from lab.errors import DataError, UserError
from lab.launch import Sweep, prepared_run
from lab.sweeps import set_threads

__all__ = ["ArgumentParser", "run_cli", "kinds", "UserError", "DataError", "count", "prepared_run",
           "set_threads", "Sweep", "load_model", "runs", "outputs"]
