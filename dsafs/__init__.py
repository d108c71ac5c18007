"""dsafs: host-based volume shadowing (RAID-1) for Linux, after OpenVMS Volume Shadowing."""

__version__ = "0.1.0"
