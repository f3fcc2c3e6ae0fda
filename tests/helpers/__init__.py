"""What the test modules share besides fixtures (those stay in ``conftest.py``, where pytest finds
them): the repository root, the Snakemake runner (``workflow``), tiny model builders (``models``),
local stand-ins for the paper's models, datasets and tasks (``paper``), a tiny LLaVA and images
(``multimodal``) and a real single-node Slurm (``slurm_cluster``).

``tests/`` is on ``sys.path`` (pytest's rootdir-relative import of ``conftest.py``), so a test
module imports them as ``from helpers.workflow import snakemake``.
"""

from pathlib import Path

#: the repository root (Snakefile, conf/, src/)
REPO = Path(__file__).resolve().parents[2]

#: experiments that name no models, to be filled on the command line (models=[...], datasets=[...]):
#: they do not run as they are, so the tests that run every experiment leave them out
EMPTY_EXPERIMENTS = ("custom",)
