"""The machine a run runs on, below everything that builds a model on it: the mesh and the
one logical-axis rule table (`sharding`), multi-process start-up (`distributed`), the
accelerators — chips, TPU slices and their compile-only devices (`hardware`) —, free device
and host memory (`memory`), and where a command's wall time goes (`timing`)."""
