from setuptools import find_packages, setup

_MKL = "mkl>=2023; platform_machine == 'x86_64' or platform_machine == 'AMD64'"

setup(
    name="minigen",
    version="0.1.0",
    description="A small reverse-mode autodiff engine with hand-written kernels and classic deep generative models",
    python_requires=">=3.10",
    packages=find_packages(include=["minigen", "minigen.*", "kernels", "kernels.*"]),
    package_data={"kernels": ["cuda/*.cu"], "minigen": ["assets/*.npz"]},
    install_requires=["numpy>=2.1", "scipy>=1.11", "numba>=0.60", "threadpoolctl>=3", "tqdm>=4.60", "Pillow>=9.0"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.80", "scikit-learn>=1.3"],
        # the oracle tier: tests that check minigen against PyTorch (CPU wheel); they skip without it
        "oracle": ["torch==2.13.0"],
        # the CUDA compile checks (NVRTC, NVVM for numba.cuda) run without a GPU; they skip without these
        "cuda-compile": ["numba-cuda>=0.30", "cuda-bindings>=13.0,<14", "nvidia-cuda-nvrtc>=13.0,<14",
                         "nvidia-nvvm>=13.0,<14"],
        # MKL for the matrix products kernels/gemm.py computes on Intel CPUs (0.40-0.86 of OpenBLAS's time
        # measured); its wheels are for x86-64 alone, elsewhere the extra installs nothing and OpenBLAS serves
        "mkl": [_MKL],
        "cuda": ["cupy-cuda12x>=13"],
        "cuda13": ["cupy-cuda13x>=13"],
        "bench": ["torch==2.13.0", _MKL, "autograd", "mygrad", "dezero"],
        "plot": ["matplotlib>=3.6"],
        "sklearn": ["scikit-learn>=1.3"],   # the 8x8 digits (no download)
    },
    entry_points={"console_scripts": ["minigen = minigen.cli:main"]},
)
