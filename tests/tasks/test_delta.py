import pytest

from tasknorm.tasks import delta_m

RESULTS = {"seg": {"miou": 0.55, "acc": 0.80}, "depth": {"abs_err": 0.40}}
BASELINE = {"seg": {"miou": 0.50, "acc": 0.80}, "depth": {"abs_err": 0.50}}
DIRECTIONS = {"seg": {"miou": True, "acc": True}, "depth": {"abs_err": False}}


def test_task_pooling_averages_within_tasks_first():
    # seg: (+10 % + 0 %) / 2 = 5 %; depth: +20 % (error went down); mean 12.5 %
    assert delta_m(RESULTS, BASELINE, DIRECTIONS) == pytest.approx(12.5)


def test_metric_pooling_averages_all_metrics():
    assert delta_m(RESULTS, BASELINE, DIRECTIONS, pooling="metric") == pytest.approx(10.0)


def test_primary_pooling_and_sign_flag():
    primary = {"seg": "miou", "depth": "abs_err"}
    assert delta_m(RESULTS, BASELINE, DIRECTIONS, pooling="primary",
                   primary=primary) == pytest.approx(15.0)
    assert delta_m(RESULTS, BASELINE, DIRECTIONS, pooling="metric",
                   positive="worse") == pytest.approx(-10.0)


def test_identical_results_give_zero():
    assert delta_m(BASELINE, BASELINE, DIRECTIONS) == 0.0


def test_errors():
    with pytest.raises(ValueError, match="unknown pooling"):
        delta_m(RESULTS, BASELINE, DIRECTIONS, pooling="mean")
    with pytest.raises(ValueError, match="needs the primary metric of task"):
        delta_m(RESULTS, BASELINE, DIRECTIONS, pooling="primary")
    with pytest.raises(ValueError, match="no direction given for metric depth/abs_err"):
        delta_m(RESULTS, BASELINE, {"seg": DIRECTIONS["seg"], "depth": {}})
    with pytest.raises(ValueError, match="missing"):
        delta_m(RESULTS, {"seg": {"miou": 0.5}, "depth": {"abs_err": 0.5}}, DIRECTIONS)
    with pytest.raises(ValueError, match="tasks"):
        delta_m(RESULTS, {"seg": BASELINE["seg"]}, DIRECTIONS)
    with pytest.raises(ValueError, match="is 0"):
        delta_m(RESULTS, {"seg": BASELINE["seg"], "depth": {"abs_err": 0.0}}, DIRECTIONS)
