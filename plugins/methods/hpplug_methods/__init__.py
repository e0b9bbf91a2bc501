"""Training methods for hpplug, one folder each with its method card: weight averages (``ema``,
``swa``), sharpness-aware minimization (``sam``), gradient clipping (``grad-clip``) and
``early-stopping``. Each uses hpplug's public API only, as a third-party plugin would."""
