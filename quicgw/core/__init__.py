"""The shared concepts of quicgw, each defined once (see DESIGN.md, "One definition of each
shared concept"). Nothing here imports the gateway, rlrouter, ilp or netem, and nothing here
does I/O or reads a clock: callers pass time in."""
