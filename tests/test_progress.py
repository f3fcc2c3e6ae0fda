"""Job logs read well with `less`: progress as plain lines, no carriage-return redraws."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from diff_erank.progress import quiet_libraries, tqdm
if sys.argv[1] == "quiet":
    quiet_libraries()
for step in tqdm(range(1000), desc="train opt h32"):
    if step == 999:
        break
import datasets
datasets.Dataset.from_dict({"a": list(range(50))}).map(lambda row: row)
"""


@pytest.mark.parametrize("mode", ["quiet", "library-bars"])
def test_a_log_file_gets_lines_not_redraws(mode: str, tmp_path) -> None:
    log = tmp_path / "job.log"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DISABLE_PROGRESS_BARS")}
    with log.open("w") as err:  # stderr is a file, as in a Snakemake job
        subprocess.run([sys.executable, "-c", SCRIPT, mode], stderr=err, env=env, check=True, timeout=120)
    text = log.read_bytes().decode()  # read_text() would turn "\r" into "\n"
    assert "INFO train opt h32: 999/1,000 (100%) it in " in text and text.count("train opt h32") == 1
    if mode == "quiet":
        assert "\r" not in text, text
    else:  # the control: datasets' own bar, left on, redraws with carriage returns
        assert "\r" in text and "Map" in text
