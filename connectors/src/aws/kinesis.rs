pub struct KinesisSourceFactory;
