"""wmbench: do backdoor watermarks in image classifiers survive removal with little data?"""

__version__ = "0.1.0"
