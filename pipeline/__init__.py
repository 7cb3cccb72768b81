"""Library of the MNER toolkit: data, labels, encoders, features and graphs. No CLI code here."""

__version__ = "0.1.0"
