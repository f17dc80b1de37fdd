"""What the write-back's two sides share, below both of them.

``actions`` proposes, records approvals and drives each push; ``platforms`` holds the writers that carry an
approved action out on a billing platform. Neither imports the other for what they agree on, which lives
here: the action kinds and their schemas (``kinds``), what a writer reports back (``outcomes``), and the
business rules every writer re-checks at push time (``prechecks``).
"""
