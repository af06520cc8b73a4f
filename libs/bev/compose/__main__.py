"""`python -m bev.compose`: render the deploy files (see bev.compose.files.main)."""

import sys

from bev.compose.files import main

sys.exit(main())
