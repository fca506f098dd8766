"""The Label Studio adapter: the only package that imports label_studio_sdk.

``transport`` authenticates and retries REST calls; ``client`` holds the calls the backend
makes; ``media`` downloads images (``netpolicy`` says which addresses it may reach); ``schema``
turns a labeling config into a ClassSpec. ``admin`` (project set-up a user would do) and
``dev_server`` (local Label Studio and backend) serve the demo, the scripts and the tests.
"""
