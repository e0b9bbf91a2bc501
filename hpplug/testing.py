"""pytest plugin for hpplug plugin authors (entry point ``pytest11``)."""
