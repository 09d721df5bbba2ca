#!/usr/bin/env python
"""Train or evaluate Mask2Former, detectron2-style:

python train_net.py --config-file configs/m2f_swin_l.yaml --num-gpus 1 [KEY VALUE ...]
python train_net.py --config-file configs/m2f_swin_l.yaml --resume
python train_net.py --config-file configs/m2f_swin_l.yaml --eval-only MODEL.WEIGHTS output/model_final.pth
"""

import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.engine.launch import main

if __name__ == "__main__":
    main()
