"""dubline: distributed batch dubbing. Its subpackages are the repository's top-level folders:
``dubline.flows`` (Prefect flows and the CLI), ``dubline.stages`` (the pipeline's stages and
what they share), ``dubline.cluster`` (Ray) and ``dubline.schemas`` (catalogues and manifests)."""
