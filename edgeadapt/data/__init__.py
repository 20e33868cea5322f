"""The data a bundle is fed: model inputs checked against a bundle's input specs, read
from files, made for timing; MNIST-1D for the demo and the tests."""
