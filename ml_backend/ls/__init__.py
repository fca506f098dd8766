"""The Label Studio adapter: the only package that imports label_studio_sdk.

``schema`` turns a labeling config into a ClassSpec; ``client`` wraps the SDK 2.x LabelStudio
client for everything De-Confusion reads from and writes to Label Studio.
"""
