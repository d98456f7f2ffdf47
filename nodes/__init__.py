"""The dmnflow node library: small building blocks and the Deep Momentum Networks trading nodes.

Nothing in ``dmnflow/`` imports this package; graphs name its classes by import path
(``uses: nodes.basic:Counter``), exactly as they would name a user's own package.
"""
