"""Point geometry: kNN (numpy: :mod:`.knn_numpy`; torch: :mod:`.knn`), FPS and ball
query, unit-sphere patches, LiDAR beams and range images, mesh sampling and distances."""
