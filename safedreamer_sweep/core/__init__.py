"""The shared core: what a cell is (identity), where it lives (store), and checks over specs."""
