"""Models: the U-Net family (DDPM / Improved DDPM / ADM) and its noisy classifier, ..."""
