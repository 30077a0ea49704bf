"""Federated learning across sites on Flower: train where the data live, compare with pooling.

``sites`` says which images each site holds; ``client`` is the Flower ``ClientApp`` (a site
trains the global model on its own images with medimg's training step); ``server`` is the
``ServerApp`` (a Flower strategy aggregates the sites' weights each round, and the global model is
validated, checkpointed and written like an epoch of ``medimg train``); ``run`` runs both in
Flower's simulation engine and the baselines; ``deploy`` holds the apps Flower's deployment engine
runs across real sites; ``report`` the per-site and comparison tables. Flower is imported only by
``client``, ``server``, ``run`` and ``deploy`` (``pip install 'medimg[federated]'``).
"""
