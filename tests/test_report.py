import pytest

from report import epoch_seconds, fastest_epoch_seconds, format_mean_std, format_result


def record(status="complete", test_acc=0.5, seconds=()):
    return {"status": status, "test_acc": test_acc, "epochs": [{"seconds": s} for s in seconds]}


def test_mean_std_is_the_sample_std():
    assert format_mean_std([0.1, 0.2, 0.3]) == "0.200 ± 0.100"  # n-1: the population std is 0.082
    assert format_mean_std([0.7]) == "0.700 ± 0.000"


def test_runs_without_a_result_are_left_out_and_counted():
    records = [record(test_acc=0.8), record(test_acc=0.6), record("diverged", test_acc=None)]
    assert format_result(records) == "0.700 ± 0.141 (1 diverged)"
    assert format_result([record("diverged", test_acc=None)]) == "- (1 diverged)"


def test_the_fastest_epoch_ignores_epochs_slowed_by_other_work():
    slowed = record(seconds=(230, 971, 235))
    assert fastest_epoch_seconds(slowed) == 230
    assert epoch_seconds(slowed) == pytest.approx(1436 / 3)
    assert fastest_epoch_seconds(record()) is None and epoch_seconds(record()) is None
