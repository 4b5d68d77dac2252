"""The warehouse: where results land. Storage and atomic writes (``storage``), table layouts
(``tables``), training exports (``exports``), dataset cards (``cards``) and status (``status``).

Imports ``spec`` only; not Dagster."""
