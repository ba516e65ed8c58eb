"""Data: dataset descriptions, raw-layout readers, splits, preprocessing, augmentation, phantoms."""
