# GPU image for probe_lab: CUDA PyTorch, then the package with its test extras.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /app
COPY pyproject.toml README.md ./
COPY probe_lab ./probe_lab
COPY conf ./conf
COPY tests ./tests
RUN pip install --no-cache-dir -e ".[test]"

ENTRYPOINT ["python", "-m", "probe_lab"]
CMD ["backend=auto", "model.size_b=70"]
