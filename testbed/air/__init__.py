"""The air's physical layer over radios, shared by ``testbed run`` and the campaign.

``phy``: pilots, pulse shaping, LS channel estimation, timing and CFO tracking, gain calibration.
``radio_airlink``: the AirLink seam (``fl.airlink``) over any ``Radio``, built on ``phy``.
``comparison``: the fixed lambda/2 array beside the live air, on the same symbols.
"""
