"""task=detection: SSD on the MobileNet v1 backbone (the paper's section 4.6).

    model.py     the detector (torchvision's SSD with our backbone and TF ssd_mobilenet_v1's extras)
"""
