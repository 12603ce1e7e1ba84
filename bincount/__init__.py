"""bincount: count the items in warehouse bin photos and flag bins whose inventory looks wrong.

The library holds the domain logic only; it never imports Prefect (see ``tasks/`` and ``flows/``).
"""

__version__ = "0.1.0"
