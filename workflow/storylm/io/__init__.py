"""Files and the error model: the bottom layer, which imports no other part of storylm."""
