"""Instance segmentation (Mask R-CNN, He et al., ICCV 2017, arXiv 1703.06870): box and anchor ops, ROIAlign,
losses (``ops``, ``losses``), instance datasets (``data``), numpy mask pasting shared with the edge runtime
(``masks``) and COCO mask AP (``evaluate``). The network itself is ``kseg.models.maskrcnn``."""
