"""Task logs: library chatter does not reach stderr (Airflow shows stderr as ERROR), phases log
start and end with their facts."""
from __future__ import annotations

import logging
import subprocess
import sys


def test_quiet_libraries_keeps_mlflow_and_tensorflow_off_stderr():
    code = ("import logging, sys; logging.basicConfig(stream=sys.stdout, level=logging.INFO); "
            "from campaignops.pipelines.tasklog import quiet_libraries; quiet_libraries(); "
            "import mlflow, tensorflow as tf; "
            "logging.getLogger('mlflow.models.evaluation.validation').info('Model validation passed!'); "
            "logging.getLogger('mlflow.tracking').warning('a real warning'); "
            "tf.constant([1.0]) + 1; print('done')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done" in out.stdout and "a real warning" in out.stdout          # warnings go through logging
    assert "Model validation passed" not in out.stdout + out.stderr          # INFO chatter is gone
    noise = [line for line in out.stderr.splitlines() if line.strip()]
    assert noise == [], noise


def test_phase_logs_start_end_and_facts(caplog):
    from campaignops.pipelines.tasklog import every, phase

    caplog.set_level(logging.INFO, logger="campaignops")
    with phase("score C005", users=1200) as facts:
        facts["targeted"] = 340
    ticker = every("predict", seconds=0)
    ticker.tick(50, 100)
    text = caplog.text
    assert "score C005 (users 1,200)" in text and "score C005 done in" in text and "targeted 340" in text
    assert "predict: 50/100 (50%" in text
