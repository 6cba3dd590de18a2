"""reproduce.py: the plan with its costs, and a run that skips what is done and resumes after kill -9."""
import os
import subprocess
import sys

from conftest import ROOT


def test_the_dry_run_lists_every_step_with_its_cost_and_the_total():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "reproduce.py"), "--dry-run"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT).stdout
    import reproduce
    lines = out.splitlines()
    assert len(lines) == len(reproduce.STEPS) + 1 and lines[-1].startswith("total")
    for step, line in zip(reproduce.STEPS, lines):
        assert line.startswith(step.command) and ("min" in line or " s " in line or " h " in line)


DRIVER = """
import sys
sys.path.insert(0, {root!r})
import reproduce
S = reproduce.Step
reproduce.STEPS = (
    S("a", "python -c \\"open('one', 'a').write('1')\\"", measured=1, data=False),
    S("a", "python -c \\"import os, signal; os.path.exists('killed') or (open('killed', 'w'), "
           "os.kill(os.getppid(), signal.SIGKILL), os._exit(1)); open('two', 'a').write('2')\\"",
      measured=1, data=False),
    S("a", "python -c \\"open('three', 'a').write('3')\\"", measured=1, data=False),
)
reproduce.ROOT = {cwd!r}
sys.exit(reproduce.main(reproduce.get_args(["a", "--state-dir", {state!r}])))
"""


def test_a_run_killed_mid_step_resumes_without_redoing_a_finished_step(tmp_path):
    """The second step kills reproduce.py itself (SIGKILL) the first time: the rerun skips the
    first step, reruns the second, then the third."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=ROOT, cwd=str(tmp_path), state=str(tmp_path / "state")))
    first = subprocess.run([sys.executable, str(driver)], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
    assert first.returncode == -9 and (tmp_path / "one").read_text() == "1"
    assert not (tmp_path / "two").exists()
    second = subprocess.run([sys.executable, str(driver)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 0, second.stderr
    assert "done before, skipped" in second.stdout
    assert [(tmp_path / n).read_text() for n in ("one", "two", "three")] == ["1", "2", "3"]
