"""DMD distillation of a pose-conditioned Wan teacher into a few-step sparse student (paper section 3.3).

Where things are:

* ``schedule.py``   the student's fixed timesteps -> sigmas, and its few-step chain (LCM-style re-noising),
                    used by training (backward simulation) and by inference (the same chain ComfyUI's
                    ``lcm`` sampler runs);
* ``dmd.py``        distribution matching (DMD2): the normalised DMD gradient, the online fake-score update,
                    the training step over any models/data adapters (the Wan one and a 1-D toy in the tests);
* ``region_loss.py`` paper Eq. 5: masked L1 + SSIM per body region (+ an optional feature network,
                    ``feature_net.py``);
* ``data.py``       the data side: latents of the teacher's layout + the ground-truth frames and region masks
                    the region loss reads (no training code; shards from videos: ``training/video_dataset.py``);
* ``wan.py``        the Wan adapters: student / real score (teacher with CFG) / fake score calls exactly as
                    ComfyUI makes them, VAE decoding of the frames the region loss needs;
* ``evaluate.py``   held-out numbers: student vs teacher vs the reference-copy baseline, DiT seconds;
* ``export.py``     the student's model card, weights for stock ``UNETLoader`` and a LoRA for stock
                    ``LoraLoaderModelOnly``; finding the card of a loaded MODEL;
* ``train.py``      one distillation run (shared by the ComfyUI node and the command line) and the CLI,
                    ``torchrun``-launchable.

Nothing here imports ComfyUI's server; ComfyUI's model classes come in through ``training.tiny_wan``.
"""
