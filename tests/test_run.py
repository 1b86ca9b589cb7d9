import pytest

from ownlm.errors import ConfigError
from ownlm.run import Run


def test_open_reads_a_run_without_rewriting_it(tiny_cfg):
    run = Run(tiny_cfg)
    cfg_file = run.dir / "config.yaml"
    stamp = cfg_file.stat().st_mtime_ns
    again = Run.open(run.dir)
    assert again.cfg.data == "demo-tags" and again.dir == run.dir
    assert [u.user_id for u in again.split.test] == [u.user_id for u in run.split.test]
    assert cfg_file.stat().st_mtime_ns == stamp


def test_open_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        Run.open(tmp_path)


def test_corpus_is_the_train_users_history_as_task_pairs(tiny_cfg):
    run = Run(tiny_cfg)
    expected = [
        p + "\nAnswer: " + a for u in run.split.train for p, a in map(run.task.item_pair, u.history)
    ]
    assert run.corpus() == expected


def test_max_history_keeps_the_last_items(tiny_cfg):
    tiny_cfg.max_history = 3
    run = Run(tiny_cfg)
    assert all(len(u.history) == 3 for u in run.dataset.users)
