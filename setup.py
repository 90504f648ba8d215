"""ament_python package definition for sspu_ros (also a plain pip-installable package)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "sspu_ros"


def _files(pattern):
    return sorted(f for f in glob(pattern) if not f.endswith("~"))


# The ROS 2 Python messages and rclpy come from the ROS install on a real ROS machine
# (apt / rosdep); on a machine without ROS they come from the package registry as
# ros-* wheels (ROS 2 Kilted builds). Only the `ros` extra pulls them.
ROS_REQUIRES = [
    "ros-rclpy",
    "ros-sensor-msgs",
    "ros-std-msgs",
    "ros-builtin-interfaces",
    "ros-diagnostic-msgs",
    "ros-rmw-fastrtps-cpp",
]

# The PU-GAN benchmark's Poisson baseline (open3d: needs the system library libusb-1.0-0)
# and `sspu bench quality --plot` (matplotlib); the benchmark skips what is missing.
EVAL_REQUIRES = [
    "open3d-cpu>=0.19; sys_platform == 'linux' and platform_machine == 'x86_64'",
    "open3d>=0.19; sys_platform != 'linux' or platform_machine != 'x86_64'",
    "matplotlib>=3.7",
]

DEV_REQUIRES = [
    *EVAL_REQUIRES,
    "pytest>=8",
    "pytest-timeout",
    "hypothesis>=6.100",
    "ruff",
    "import-linter>=2.1",
    "colcon-core",
    "colcon-ros",
    "ros-ament-package",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Self-supervised LiDAR point-cloud densification (SSPU-Net) for ROS 2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", _files("launch/*.launch.py")),
        ("share/" + PACKAGE + "/config", _files("config/*")),
        ("share/" + PACKAGE + "/models", _files("models/*")),
    ],
    # torch is a requirement with a range, never a pin: the set-up script installs the
    # CPU build (torch==2.13.0) first so pip does not fetch a multi-GB CUDA build; a GPU
    # user installs the CUDA build of their choice first (see README).
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "pyyaml>=6",
        "jsonschema>=4.17",
        "rosbags>=0.10",
        "tqdm>=4.60",
        "torch>=2.2",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "tensorboard>=2.14",
    ],
    extras_require={"ros": ROS_REQUIRES, "dev": DEV_REQUIRES, "eval": EVAL_REQUIRES,
                    # the TensorRT backend: needs a CUDA build of torch and an NVIDIA GPU
                    "tensorrt": ["tensorrt>=10"]},
    zip_safe=True,
    maintainer="sspu_ros developers",
    maintainer_email="sspu-ros@users.noreply.github.com",
    entry_points={
        "console_scripts": [
            "sspu = sspu_ros.cli.main:main",
            "upsample_node = sspu_ros.ros.node:main",
        ],
    },
)
