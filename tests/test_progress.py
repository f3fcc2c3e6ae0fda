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
    # the loop breaks at its last item (as train.py's does at step == steps): the line ends at N/N
    assert "INFO train opt h32: 1,000/1,000 (100%) it in " in text and text.count("train opt h32") == 1
    if mode == "quiet":
        assert "\r" not in text, text
    else:  # the control: datasets' own bar, left on, redraws with carriage returns
        assert "\r" in text and "Map" in text


def test_the_last_line_counts_what_was_done_and_rounds_down(caplog) -> None:
    import logging

    from diff_erank.progress import LogProgress

    caplog.set_level(logging.INFO, logger="diff_erank.progress")
    for step in LogProgress(range(61), desc="train"):  # 61 items, the loop leaves at the 30th
        if step == 29:
            break
    bar = LogProgress(total=1000, desc="dump", unit="tok")
    bar.update(999)
    bar.close()
    for _ in LogProgress(range(3), desc="measure"):  # runs to its end
        pass
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("train: 30/61 (49%) it in ")  # 30 of 61 is 49.2 %
    assert lines[1].startswith("dump: 999/1,000 (99%) tok in ")  # not 100% with a token left
    assert lines[2].startswith("measure: 3/3 (100%) it in ")
