from memeguard.cli import main

main()
