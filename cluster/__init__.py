"""Ray: connect or start a cluster, size actor pools from stage resources, run stage jobs."""
