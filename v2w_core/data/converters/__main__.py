"""``python -m v2w_core.data.converters NAME --input PATH --out ROOT``: see the package docstring."""

import sys

from v2w_core.data.converters import main

sys.exit(main())
