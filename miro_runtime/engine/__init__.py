"""The CL engine: streams, models, episodic memory, one file per CL method (strategies/), REP's parts (rep/),
the incremental ``Learner`` (stream -> store -> memory -> step -> metrics), checkpoints, and the controller
protocol (hooks.py) it calls. Imports storage/ and profilers/ below it, nothing above."""
