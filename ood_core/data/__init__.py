"""Data sets of the study: registry kind -> loader returning an ``ImageSet`` (uint8 images).

    s = load_dataset("npz", shared_data_dir() / "cifar10_test.npz")
    x = to_tensor(s.images[:256], CIFAR10_MEAN, CIFAR10_STD, size=32, channels=3)

Kinds: npz, cifar10, cifar100, svhn, mnist, fashion_mnist, kmnist, image_folder, imagenet_c,
digits, gaussian_noise_images, uniform_noise_images, corrupted (see ``DATASETS``).
OpenOOD v1.5's CIFAR-10 benchmark lists, mapped to rows by identifiers: ``openood_splits``.
"""

# isort: off
from ood_core.data import npz, torchvision_formats, folders, digits, noise  # noqa: F401  (register loaders)

# isort: on
from ood_core.data.base import DATASETS, DatasetError, ImageSet, load_dataset, register_loader
from ood_core.data.corruptions import CIFAR_C_PARAMS, CORRUPTIONS, corrupt
from ood_core.data.noise import gaussian_noise_images, uniform_noise_images
from ood_core.data.splits import assert_disjoint, split_indices
from ood_core.data.transforms import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, iter_batches, to_tensor
from ood_core.data.verify import SHARED_DATA_MANIFEST, sha256_file, shared_data_dir, verify_files

__all__ = [
    "DATASETS",
    "DatasetError",
    "ImageSet",
    "load_dataset",
    "register_loader",
    "CIFAR_C_PARAMS",
    "CORRUPTIONS",
    "corrupt",
    "gaussian_noise_images",
    "uniform_noise_images",
    "assert_disjoint",
    "split_indices",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "iter_batches",
    "to_tensor",
    "SHARED_DATA_MANIFEST",
    "sha256_file",
    "shared_data_dir",
    "verify_files",
]
