"""dcls-zoo's research template: the ``dcls-zoo`` command (LightningModules and DataModules land here)."""
