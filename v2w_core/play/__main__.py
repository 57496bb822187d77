"""``python -m v2w_core.play --model <uri>``: see :mod:`v2w_core.play.cli`."""

from v2w_core.play.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
