"""The machinery that keeps results safe, below the science: the scripts import it, it imports
no science module (lab.checkpoints builds a network from a checkpoint's description, the one
exception).

    lab.launch       before a run trains: finished already (and where)? its folder and threads;
                     sweeps, which hand a script's own `train` to worker processes
    lab.runs         run folders: names, records, RunFolder (lock, checkpoints, resume), lookups
    lab.sweeps       which runs are left, shards over machines, a pool of worker processes
    lab.outputs      where tables and figures may go; the README's tables updated under a lock
    lab.files        atomic writes, checked reads (JSON, checkpoints), folder locks, finite weights
    lab.checkpoints  a network rebuilt from a checkpoint, its description and weights checked
    lab.datafiles    dataset files checked before use; an image folder decoded once and cached
    lab.cli          argparse with one-line errors, checked numeric flags, run_cli
    lab.errors       UserError and DataError: one line, exit code 2
"""
