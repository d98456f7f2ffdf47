"""``python -m nodes.models`` is the training script (``python -m nodes.models.train``)."""

from .train import main

raise SystemExit(main())
