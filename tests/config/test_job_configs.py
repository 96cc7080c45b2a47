"""A sweep's job configs made from templates (lossbench/config/job_configs.py) against Hydra
composing each job in full: equal, node for node and flag for flag, over the real conf/."""

from __future__ import annotations

import copy

import pytest
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from lossbench.config import job_configs
from lossbench.config.job_configs import JobConfigs, same_config
from lossbench.experiment.sweep_checks import planned_jobs


def made_and_hydras(*overrides: str):
    """(jobs, their JobConfigs, configs from it, configs Hydra composes in full)."""
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        config = GlobalHydra.instance().hydra.compose_config(
            "config", list(overrides), run_mode=RunMode.MULTIRUN, with_log_configuration=False)
        HydraConfig.instance().set_config(config)
        try:
            jobs = planned_jobs(config)
            configs = JobConfigs(loader, config)
            made = [configs.compose(job) for job in jobs]
            hydras = [loader.load_sweep_config(config, list(job)) for job in jobs]
            return jobs, configs, made, hydras
        finally:
            HydraConfig.instance().cfg = None


@pytest.mark.parametrize("overrides", [
    ["experiment=noisy_labels"],  # 5 losses x 4 rates x 5 seeds
    ["seed=0,1,2", "loss=ce,gce", "optimizer.lr=0.1,0.01", "trainer.epochs=2,null"],
    ["seed=0,1", "dataset.noise.kind=symmetric", "dataset.noise.rate=0.1,0.3",
     "hydra.job.chdir=true"],
    ["seed=0,1,2", "+trainer.extra=1,2", "++trainer.plots=true,false"],
    ["seed=1,2", "model.hidden=[8],[16,8]", "trainer={epochs:2},{epochs:3}",
     "hydra.job.config.override_dirname.exclude_keys=[seed]"],
    ["seed=1,2,3", "trainer.epochs=${seed}", "dataset=digits,wine"],
])
def test_every_job_is_the_config_hydra_composes(overrides):
    jobs, configs, made, hydras = made_and_hydras(*overrides)
    assert len(jobs) > 2
    for job, ours, hydras_own in zip(jobs, made, hydras):
        assert same_config(ours, hydras_own), job
        assert OmegaConf.to_container(ours) == OmegaConf.to_container(hydras_own), job
    assert not configs.refused
    # Hydra composes each template and, to check it, the first job made from it; no more
    assert len(configs.templates) <= configs.composed <= 2 * len(configs.templates)


@pytest.mark.parametrize("overrides", [
    ["trainer.epochs=3,4", "seed=0,1", "++trainer.epochs=3"],
    ["dataset.noise.rate=0.0,0.4", "seed=0,1", "dataset.noise={kind:symmetric,rate:0.0}"],
    # the preset's sweep values come first, the command line's dict after them: it wins
    ["experiment=noisy_labels", "loss=ce", "seed=0", "dataset.noise={kind:symmetric,rate:0.0}"],
])
def test_a_value_set_again_by_a_later_override_is_hydras(overrides):
    """Hydra applies value overrides in order: where another override sets the same key (or
    one above it), the later one wins; such jobs are composed by Hydra, not copied."""
    jobs, configs, made, hydras = made_and_hydras(*overrides)
    assert len(jobs) >= 4
    for job, ours, hydras_own in zip(jobs, made, hydras):
        assert same_config(ours, hydras_own), job
    assert not configs.templates and configs.composed == len(jobs)


def test_the_noisy_labels_study_composes_ten_of_its_hundred_jobs():
    jobs, configs, _, _ = made_and_hydras("experiment=noisy_labels")
    assert (len(jobs), len(configs.templates), configs.composed) == (100, 5, 10)


def test_a_job_asked_for_again_is_a_fresh_copy_of_the_same_config():
    jobs, configs, made, _ = made_and_hydras("seed=0,1")
    again = configs.compose(jobs[1])
    assert same_config(again, made[1]) and again is not made[1]
    with open_dict(again):
        again.seed = 99
    assert configs.compose(jobs[1]).seed == 1


def test_a_template_whose_copy_differs_from_hydras_is_not_used_again(monkeypatch):
    """The first job made from a template is checked against Hydra's: a copy that differs
    (here: made wrong on purpose) is replaced by Hydra's, and so are all that template's
    later jobs."""
    made_from = JobConfigs._from_template

    def wrong(self, template, settings, parsed):
        cfg = made_from(self, template, settings, parsed)
        cfg.trainer.epochs = 1234
        return cfg

    monkeypatch.setattr(JobConfigs, "_from_template", wrong)
    jobs, configs, made, hydras = made_and_hydras("seed=0,1,2,3")
    assert len(configs.refused) == 1 and configs.composed == 4
    assert all(same_config(a, b) for a, b in zip(made, hydras))
    assert all(cfg.trainer.epochs != 1234 for cfg in made)


def test_same_config_tells_a_value_an_interpolation_and_a_flag_apart():
    _, _, made, _ = made_and_hydras("seed=0,1")
    base = made[0]
    value = copy.deepcopy(base)
    value.seed = base.seed + 5
    written = copy.deepcopy(base)
    written.seed = "${trainer.batch_size}"
    flag = copy.deepcopy(base)
    OmegaConf.set_struct(flag.trainer, False)
    assert same_config(base, copy.deepcopy(base))
    assert not any(same_config(base, other) for other in (value, written, flag))


def test_jobs_that_choose_other_groups_get_templates_of_their_own():
    jobs, configs, made, _ = made_and_hydras("loss=ce,gce,sce", "seed=0,1")
    assert len(configs.templates) == 3
    assert [cfg.hydra.runtime.choices.loss for cfg in made] == [
        "ce", "ce", "gce", "gce", "sce", "sce"]


def test_the_loader_makes_jobs_from_templates_only_for_an_in_process_launcher_until_let_go():
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for launcher, kept in (("stacked", True), ("basic", True), ("parallel", False)):
            config = GlobalHydra.instance().hydra.compose_config(
                "config", ["seed=0,1", f"hydra/launcher={launcher}"],
                run_mode=RunMode.MULTIRUN, with_log_configuration=False)
            try:
                for job in (["seed=0"], ["seed=1"]):  # the template, the copy checked
                    job_configs.for_sweep(config).compose(job)
                job_configs.keep_for_sweep(config)
                assert ("load_sweep_config" in vars(loader)) is kept, launcher
                composed = job_configs._current.composed
                cfg = loader.load_sweep_config(config, ["seed=1"])
                assert cfg.seed == 1
                assert job_configs._current.composed == composed  # a copy, or Hydra's own
            finally:
                job_configs.let_go()
            assert "load_sweep_config" not in vars(loader)
