from lossbench import tasks


def test_every_validation_metric_direction_agrees_with_lower_is_better():
    for kind, metrics in tasks.VALIDATION_METRICS.items():
        for name, mode in metrics.items():
            assert (mode == "min") == tasks.lower_is_better(name), (kind, name)


def test_task_kind_and_headline():
    assert [tasks.task_kind(t) for t in tasks.TASKS] == ["classification", "classification",
                                                        "regression"]
    assert tasks.headline_metric("binary") == "accuracy"
    assert tasks.headline_metric("regression") == "rmse"
    assert tasks.lower_is_better("test_rmse") and not tasks.lower_is_better("macro_f1")
