"""``python -m QSMPlannerLib.cli`` runs the ``qsmplanner`` command."""
import sys

from . import main

sys.exit(main())
